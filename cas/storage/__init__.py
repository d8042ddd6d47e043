"""This machine's disk: the root's layout, processes, blobs, the catalog and its queries.

Knows nothing of HTTP, S3, the command line or the Store façade."""
