"""Drop-ins for models of other libraries (each imports its library only when called)."""
