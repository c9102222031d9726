"""The event-time attribution join: impressions + clicks -> mature feedback (DESIGN §4)."""
