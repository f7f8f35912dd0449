"""What goes over the wire: the websocket protocol and its schemas, the event bus, audio resampling."""
