"""
Webhooks to an app's backend, in Pusher's format: L{pushsvc.webhooks.format} (pure: targets,
events, body, signature) and L{pushsvc.webhooks.sender} (debounce, batching, durable retries).
"""
