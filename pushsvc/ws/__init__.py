"""The WebSocket side: Pusher protocol handlers; Autobahn workarounds and keep-alive."""
