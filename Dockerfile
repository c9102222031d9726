# The recal worker image used by docker-compose.yml (a deployment, not needed for dev/tests).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY schemas ./schemas
RUN pip install --no-cache-dir .
# Non-root: the worker needs no privileges and no local disk (its state is in Kafka).
RUN useradd --create-home recal
USER recal
ENV RECAL_WEB_HOST=0.0.0.0
EXPOSE 6066
ENTRYPOINT ["recal"]
CMD ["worker"]
