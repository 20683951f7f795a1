"""Traffic feedback: what a served router decided, what the client later said about the answer, and learning from
that log (only the chosen model's outcome is known: partial labels, off-policy corrections)."""
