"""What an image is made of and who made it, as documents attached to the image: the SBOM (``bill``, ``spdx``,
``cyclonedx``) and the artifacts that carry them (``attach``)."""
