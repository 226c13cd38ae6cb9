# Deployment targets; the main Makefile includes this file (`include deploy/deploy.mk`) and provides
# VPY (the venv's python) and STAMP (the set-up target). deploy/README.md explains each target.
#
#   make certs        CA, server and operator certificates + one per client in $(CERTS_DIR) (existing ones kept)
#   make image        the Docker image $(SLPERF_IMAGE) from deploy/Dockerfile
#   make compose-up   image, then the compose federation: certs job, server, c1..c3 (waits for health)
#   make compose-down stop it (volumes kept; `docker-compose down -v` deletes them)
#   make deploy-test  the deployment tests (tests/deploy): static checks always; compose and namespace federations
#                     where dockerd/docker-compose (deploy/ci-docker-setup.sh) and root are available
#
# OFFLINE=1 (machines that reach no container registry and whose build containers reach no package index): the
# image is built FROM the local debootstrap base slperf/base:bookworm and pip installs only from deploy/wheelhouse
# (--no-index); both are prepared by deploy/ci-docker-setup.sh.

DOCKER          ?= docker
DOCKER_COMPOSE  ?= docker-compose
SLPERF_IMAGE    ?= slperf:latest
CERTS_DIR       ?= certs
SERVER_NAMES    ?= localhost 127.0.0.1 server
CLIENT_IDS      ?= c1 c2 c3
OFFLINE         ?= 0

ifeq ($(OFFLINE),1)
SLPERF_BASE_IMAGE ?= slperf/base:bookworm
SLPERF_PIP_SOURCE ?= wheelhouse
else
SLPERF_BASE_IMAGE ?= python:3.11-slim
SLPERF_PIP_SOURCE ?= index
endif
export SLPERF_IMAGE SLPERF_BASE_IMAGE SLPERF_PIP_SOURCE

.PHONY: certs image compose-up compose-down deploy-test

certs: $(STAMP)
	@test -f $(CERTS_DIR)/ca.pem || $(VPY) -m slperf.cli certs init --dir $(CERTS_DIR) $(foreach n,$(SERVER_NAMES),--server-name $(n))
	@test -f $(CERTS_DIR)/.gitignore || printf '# private keys: never committed\n*\n' > $(CERTS_DIR)/.gitignore
	@for id in $(CLIENT_IDS); do \
	  test -f $(CERTS_DIR)/clients/$$id.pem || $(VPY) -m slperf.cli certs add-client $$id --dir $(CERTS_DIR) || exit 1; \
	done

image:
ifeq ($(OFFLINE),1)
	bash deploy/ci-docker-setup.sh wheelhouse base import
endif
	$(DOCKER) build -f deploy/Dockerfile -t $(SLPERF_IMAGE) \
	  --build-arg BASE_IMAGE=$(SLPERF_BASE_IMAGE) --build-arg PIP_SOURCE=$(SLPERF_PIP_SOURCE) .

compose-up: image
	$(DOCKER_COMPOSE) up -d

compose-down:
	$(DOCKER_COMPOSE) --profile operator down

deploy-test: $(STAMP)
	$(VPY) -m pip install --quiet -r deploy/requirements-deploy-test.txt
	$(VPY) -m pytest -q tests/deploy
