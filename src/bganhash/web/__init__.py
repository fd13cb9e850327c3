"""Static files of the search page the service serves at GET /."""
