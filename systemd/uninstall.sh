#!/bin/sh
exec "$(dirname "$0")/install.sh" --uninstall "$@"
