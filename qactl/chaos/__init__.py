"""`qactl chaos`: real faults on the running stack, and the check that every accepted question
still ends in exactly one terminal state (UI-free)."""
