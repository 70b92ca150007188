"""pushsvc: a real-time push service speaking the Pusher Channels protocol v7, on Twisted."""

__version__ = "0.2.0"
