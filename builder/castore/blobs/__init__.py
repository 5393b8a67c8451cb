"""Blob services: where file contents live, addressed by BLAKE3 digest."""
