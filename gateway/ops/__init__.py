"""Running the process: logging and error reports, both without patient data."""
