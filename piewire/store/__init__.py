"""Key stores: where API keys and their policies live (SQLite or Redis)."""
