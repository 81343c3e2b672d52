"""The decoding engines: ar, batch, sd, mcsd and seed."""
