"""convert package."""
