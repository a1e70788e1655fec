"""The daemon side of the link to a module: udev identity, control channel, frame ring."""
