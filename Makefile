# Two commands do everything: `make run` (set up, migrate, start API + worker) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
API_WORKERS ?= 1
# Test processes: most tests wait on workers, timeouts and sleeps, so three share two cores well.
TEST_PROCESSES ?= 3
export DATABASE_URL ?= mysql://root@127.0.0.1:3306/doctor_appointments
export REDIS_URL ?= redis://127.0.0.1:6379/0
# Proxies whose X-Forwarded-For names the client (rate limits count per client): behind a load balancer, its address.
export FORWARDED_ALLOW_IPS ?= 127.0.0.1

.PHONY: install run migrate demo test bench lint check-services docker-secrets clean

$(BIN)/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BIN)/activate

install: $(BIN)/activate  ## virtualenv with the service, the worker and the test tools

check-services: install  ## say plainly when MySQL or Redis is not there
	@$(BIN)/python scripts/check_services.py

migrate: check-services  ## create the database if missing and apply the migrations
	$(BIN)/python -m service migrate

demo: migrate  ## a small clinic to try in the development database (doctors, patients, bookings); prints logins
	$(BIN)/python -m service demo

run: migrate  ## API on :$(PORT) plus one worker; Ctrl-C stops both
	@echo "API:      http://127.0.0.1:$(PORT)"
	@echo "Swagger:  http://127.0.0.1:$(PORT)/schema/swagger"
	@echo "ReDoc:    http://127.0.0.1:$(PORT)/schema/redoc"
	@echo "Health:   http://127.0.0.1:$(PORT)/health"
	@echo "Metrics:  http://127.0.0.1:$(PORT)/metrics"
	@# Several API workers share their metrics through files in a fresh directory (prometheus-client's multiprocess mode).
	@if [ "$(API_WORKERS)" -gt 1 ]; then export PROMETHEUS_MULTIPROC_DIR=$$(mktemp -d); fi; \
	trap 'kill 0' INT TERM EXIT; \
	$(BIN)/python -m worker & \
	$(BIN)/uvicorn service.api.app:app --host $(HOST) --port $(PORT) --workers $(API_WORKERS) --no-server-header \
		--forwarded-allow-ips '$(FORWARDED_ALLOW_IPS)' & \
	wait

test: check-services  ## the whole suite against the local MariaDB/MySQL and Redis, in TEST_PROCESSES processes
	$(BIN)/pytest -n $(TEST_PROCESSES)

bench: check-services  ## every benchmark scenario (about 10 min); writes tests/bench/results/latest.json and .png
	$(BIN)/python -m tests.bench.run

docker-secrets:  ## random JWT_SECRET, MYSQL_PASSWORD and REDIS_PASSWORD into .env for docker compose (kept if set)
	@$(PYTHON) scripts/docker_secrets.py

lint: install
	$(BIN)/ruff check service worker tests scripts

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
