"""dynstore: a self-hosted, DynamoDB-compatible, replicated database."""

__version__ = "0.1.0"
