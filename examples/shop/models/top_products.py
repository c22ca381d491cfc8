"""Top 10 products by completed revenue, as a PySpark model."""

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F


def build(spark: SparkSession, ref) -> DataFrame:
    """Rank products by revenue of purchases that were completed and not returned.

    Purchases are counted per product first and the catalogue joined to those 1,000 rows:
    Spark does not move an aggregation below a join by itself, and aggregating joined text
    columns (make, model, category) would sort every purchase.
    """
    sold = (
        ref("purchases")
        .where("purchased_at IS NOT NULL AND returned_at IS NULL")
        .groupBy("product_id")
        .agg(F.count("*").alias("purchases"))
    )
    products = ref("products")
    categories = ref("make_categories")
    revenue = (
        sold.join(products, sold.product_id == products.id)
        .join(categories, "make", "left")
        .select(
            "product_id",
            "make",
            "model",
            "purchases",
            (F.col("price") * F.col("purchases")).cast("decimal(18,2)").alias("revenue"),
            F.coalesce("category", F.lit("unknown")).alias("category"),
        )
    )
    return revenue.orderBy(F.desc("revenue"), "product_id").limit(10)
