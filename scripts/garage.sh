#!/usr/bin/env bash
# Garage, the S3 server the shipper's integration tests run against (AGPL: used as an external
# test server, never linked). `scripts/garage.sh ensure` installs it once into ~/.cargo/bin
# (about 20 minutes of compiling on a 2-core machine) and is a no-op afterwards.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
version=2.5.0
case ${1:-ensure} in
    ensure)
        if garage --version 2>/dev/null | grep -qF "$version"; then
            exit 0
        fi
        echo "garage: building Garage $version from its published crate source (cached afterwards in ~/.cargo/bin)" >&2
        cargo install garage --version "$version" --locked --quiet
        ;;
    *)
        echo "usage: scripts/garage.sh ensure" >&2
        exit 2
        ;;
esac
