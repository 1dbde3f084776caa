"""The upstream, Modellix: its HTTP client and error tree (``client``), and the request
budget every worker shares (``gate``)."""
