"""What both programs need from the host: file paths, settings resolution, and /proc/net parsing."""
