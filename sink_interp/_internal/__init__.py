"""Private helpers of sink_interp. Nothing here is public API."""
