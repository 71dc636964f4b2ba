from dagster import DynamicPartitionsDefinition

# One partition per uploaded photo; keys are opaque random upload ids (never names/hashes).
uploads_partitions = DynamicPartitionsDefinition(name="uploads")
