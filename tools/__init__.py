"""Developer tools that are not part of the installed package (code generation); run from the repository root."""
