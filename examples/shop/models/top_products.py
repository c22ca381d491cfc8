"""Top 10 products by completed revenue, as a PySpark model."""

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F


def build(spark: SparkSession, ref) -> DataFrame:
    """Rank products by revenue of purchases that were completed and not returned."""
    purchases = ref("purchases").where("purchased_at IS NOT NULL AND returned_at IS NULL")
    products = ref("products")
    categories = ref("make_categories")
    revenue = (
        purchases.join(products, purchases.product_id == products.id)
        .join(categories, "make", "left")
        .groupBy(products.id.alias("product_id"), "make", "model")
        .agg(
            F.count("*").alias("purchases"),
            F.sum("price").cast("decimal(18,2)").alias("revenue"),
            F.coalesce(F.first("category"), F.lit("unknown")).alias("category"),
        )
    )
    return revenue.orderBy(F.desc("revenue"), "product_id").limit(10)
