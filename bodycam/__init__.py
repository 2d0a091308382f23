"""Bodycam: batch body-camera footage in, searchable and auditable face evidence out."""

__version__ = "0.1.0"
