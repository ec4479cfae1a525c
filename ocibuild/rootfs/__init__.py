"""What a base image holds, read from its layers without running or unpacking it: the files and links as a
runtime stacks them (``layers``), its Python (``pyenv``), its libraries and modules (``files``), ELF headers (``elf``).
For running the image's own Python at build time (the smoke test, bytecode): its layers unpacked into a folder
(``unpack``) and a sandbox there (``sandbox``)."""
