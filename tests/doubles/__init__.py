"""Local servers that stand in for hosted providers, enforcing each provider's published API."""
