"""The host-side ISP: RAW frames to pictures, strip by strip (see DESIGN.md)."""
