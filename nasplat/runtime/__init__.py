"""Ray-side code: the Train worker loops and resource planning."""
