"""Bytes from elsewhere into staging (HTTP origins, S3 buckets); never touches the catalog."""

from cas import DISTRIBUTION, __version__

#: Sent with every request, to origins and to S3: the distribution's name and version.
USER_AGENT = f"{DISTRIBUTION}/{__version__}"
