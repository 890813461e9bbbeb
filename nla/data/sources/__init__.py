"""Readers for each dataset's files: which images, which labels, which classes."""
