"""`make demo`: the whole authd path on this machine, with moto as a local AWS."""
