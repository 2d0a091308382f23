"""Celery edge of Bodycam: the app and thin tasks that call the library."""
