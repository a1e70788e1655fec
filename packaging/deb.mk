# The Debian package: `make deb` builds build/deb/modcam_VERSION_ARCH.deb
# from packaging/debian/ and checks it with lintian (errors fail the build).
# Included from the Makefile.
#
# dpkg-buildpackage wants debian/ at the top of the source tree, and the
# debian/ directory lives at packaging/debian, so the build runs in a copy:
# build/deb/modcam-VERSION/ holds what git knows of the package's inputs
# (tracked files plus untracked, not ignored ones: this working tree, not a
# commit) with packaging/debian as debian/. The .deb is rebuilt only when one
# of those inputs is newer, so tests reuse a package that is up to date (a
# deleted input is not noticed: `rm -rf build/deb` then).
# PATH is the system's during the build: Debian's tools must run the
# machine's /usr/bin/python3, not a python3 found earlier on PATH.

# Parse-time values, read on every make run: only tools every checkout has.
DEB_VERSION := $(shell sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' packaging/debian/changelog)
DEB_ARCH := $(shell dpkg --print-architecture)
DEB_DIR := build/deb
DEB_SRC := $(DEB_DIR)/modcam-$(DEB_VERSION)
DEB_FILE := $(DEB_DIR)/modcam_$(DEB_VERSION)_$(DEB_ARCH).deb
DEB_CHANGES := $(DEB_DIR)/modcam_$(DEB_VERSION)_$(DEB_ARCH).changes
DEB_INPUTS := $(wildcard $(shell git ls-files --cached --others --exclude-standard -- \
  pyproject.toml setup.py README.md daemon dbus docs native packaging))
DEB_PATH := /usr/sbin:/usr/bin:/sbin:/bin

.PHONY: deb

deb: $(DEB_FILE)

# The build dependencies come from scripts/system-packages.txt (`make system`).
$(DEB_FILE): $(DEB_INPUTS) | system
	@rm -rf $(DEB_DIR)
	@mkdir -p $(DEB_SRC)
	@tar -cf - $(DEB_INPUTS) | tar -C $(DEB_SRC) -xf -
	@cp -r packaging/debian $(DEB_SRC)/debian
	@echo "building $@ (log: $(DEB_DIR)/build.log)"
	@cd $(DEB_SRC) && env PATH=$(DEB_PATH) dpkg-buildpackage -us -uc -b \
	  >../build.log 2>&1 || { tail -40 ../build.log; exit 1; }
	@env PATH=$(DEB_PATH) lintian --fail-on error --info $(DEB_CHANGES) \
	  || { rm -f $@; exit 1; }
