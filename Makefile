# zerostep — see README.md. Every target installs what it needs, idempotently.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
# Test servers' virtualenvs live outside the checkout, so fresh clones on one machine share them.
export ZEROSTEP_TEST_CACHE ?= /var/cache/zerostep-test
# Cargo's output (helpers may set CARGO_TARGET_DIR); built components are always copied to target/.
CARGO_OUT := $(or $(CARGO_TARGET_DIR),target)
SENSORS_OUT := target/sensors
TEST_SENSORS_OUT := target/test-sensors
HOSTILE_VARIANTS := well-behaved infinite-loop memory-bomb panic huge-return wrong-contract slow-enrich
STATE_DIR ?= target/state

.PHONY: help setup build sensors test-sensors run test test-deps lint bench clean install demo

PREFIX ?= /usr/local
DESTDIR ?=

help:
	@echo "make run    build the agent and sensors, start the agent (foreground, API on 127.0.0.1:7787)"
	@echo "make test   install test prerequisites and run every test"
	@echo "make bench  benchmarks (not in CI); make lint: fmt + clippy"
	@echo "make demo   two sample services, traffic and the agent: traces within a minute"
	@echo "make install  binary, sensors and systemd unit into place (PREFIX=/usr/local)"

setup:
	@bash tests/setup/00-rust.sh

build: setup
	$(CARGO) build --release -p zerostep

# The sensors a host needs: one per server (gunicorn, uwsgi) and the libraries sensor, whose bundle
# every traced process loads. Each carries its Python bundles (sensors/NAME/python) inside its wasm.
SENSORS := gunicorn uwsgi libraries asgi

sensors: setup
	$(CARGO) build --target wasm32-wasip2 --profile sensor $(foreach s,$(SENSORS),-p zerostep-sensor-$(s))
	@mkdir -p $(SENSORS_OUT)
	@for s in $(SENSORS); do \
	  cp $(CARGO_OUT)/wasm32-wasip2/sensor/zerostep_sensor_$$s.wasm $(SENSORS_OUT)/$$s.wasm.tmp; \
	  mv $(SENSORS_OUT)/$$s.wasm.tmp $(SENSORS_OUT)/$$s.wasm; \
	done
	@ls -l $(SENSORS_OUT)

# Misbehaving sensors for the host tests (contract 0.1, so 0.1 keeps loading), one per behaviour,
# plus two versions of a good one; and two versions of the contract-0.2 probe sensor.
test-sensors: setup
	@mkdir -p $(TEST_SENSORS_OUT)
	@for v in $(HOSTILE_VARIANTS); do \
	  ver=9.9.9; [ $$v = well-behaved ] && ver=1.0.0; \
	  HOSTILE_VERSION=$$ver $(CARGO) build -q --target wasm32-wasip2 --profile sensor -p zerostep-sensor-hostile --features $$v; \
	  cp $(CARGO_OUT)/wasm32-wasip2/sensor/zerostep_sensor_hostile.wasm $(TEST_SENSORS_OUT)/$$v.wasm; \
	done
	@for ver in 1.0.0 2.0.0; do \
	  HOSTILE_VERSION=$$ver $(CARGO) build -q --target wasm32-wasip2 --profile sensor -p zerostep-sensor-hostile --features slow-enrich; \
	  cp $(CARGO_OUT)/wasm32-wasip2/sensor/zerostep_sensor_hostile.wasm $(TEST_SENSORS_OUT)/versioned-$$ver.wasm; \
	done
	@# A contract-0.2 sensor for a test-only module, in two versions (attribute x=1, x=2).
	@for x in 1 2; do \
	  PROBE_X=$$x PROBE_VERSION=$$x.0.0 $(CARGO) build -q --target wasm32-wasip2 --profile sensor -p zerostep-sensor-probe; \
	  cp $(CARGO_OUT)/wasm32-wasip2/sensor/zerostep_sensor_probe.wasm $(TEST_SENSORS_OUT)/probe-$$x.wasm; \
	done
	@# And a version whose bundle raises at import (ValueError): refused in the canary process.
	PROBE_X="int('bad')" PROBE_VERSION=3.0.0 $(CARGO) build -q --target wasm32-wasip2 --profile sensor -p zerostep-sensor-probe
	@cp $(CARGO_OUT)/wasm32-wasip2/sensor/zerostep_sensor_probe.wasm $(TEST_SENSORS_OUT)/probe-bad.wasm
	@ls $(TEST_SENSORS_OUT)

run: build sensors
	@mkdir -p $(STATE_DIR)
	./target/release/zerostep agent --sensors-dir $(SENSORS_OUT) --state-dir $(STATE_DIR)

test-deps: setup
	@for s in tests/setup/[0-9]*.sh; do bash "$$s"; done

test: test-deps sensors test-sensors
	$(CARGO) test --workspace $(foreach s,$(SENSORS),--exclude zerostep-sensor-$(s)) --exclude zerostep-sensor-hostile --exclude zerostep-sensor-probe -- --test-threads=2

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --target wasm32-wasip2 $(foreach s,$(SENSORS),-p zerostep-sensor-$(s)) -p zerostep-sensor-hostile -p zerostep-sensor-probe -- -D warnings

bench: test-deps sensors
	@for b in bench/[0-9]*.sh; do echo "== $$b"; bash "$$b"; done

demo: build sensors
	@bash tests/setup/10-apt.sh
	@bash demo/run.sh

# The binary, the sensors and the systemd unit. `systemctl enable --now zerostep` starts it.
install: build sensors
	install -D -s -m 0755 target/release/zerostep $(DESTDIR)$(PREFIX)/bin/zerostep
	install -d -m 0700 $(DESTDIR)/var/lib/zerostep
	install -D -m 0644 -t $(DESTDIR)/var/lib/zerostep/sensors $(foreach s,$(SENSORS),$(SENSORS_OUT)/$(s).wasm)
	sed 's|/usr/local/bin/zerostep|$(PREFIX)/bin/zerostep|' deploy/zerostep.service > zerostep.service.tmp
	install -D -m 0644 zerostep.service.tmp $(DESTDIR)/etc/systemd/system/zerostep.service
	rm -f zerostep.service.tmp
	install -D -m 0644 deploy/zerostep.toml.example $(DESTDIR)/etc/zerostep/zerostep.toml.example
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "installed; start with: systemctl enable --now zerostep"

clean:
	$(CARGO) clean
