"""Live conversation: listening (Silero VAD), answering and drawing as a paced stream (no WebRTC here;
bots/live puts it on a peer connection)."""
