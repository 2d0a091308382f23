"""Media I/O: probing and decoding through FFmpeg (PyAV)."""
