-- Revenue of completed (not returned) purchases per day and product category.
SELECT
  CAST(p.purchased_at AS DATE)          AS purchase_date,
  COALESCE(c.category, 'unknown')       AS category,
  COUNT(*)                              AS purchases,
  CAST(SUM(pr.price) AS DECIMAL(18, 2)) AS revenue
FROM {{ ref('purchases') }} AS p
JOIN {{ ref('products') }} AS pr ON pr.id = p.product_id
LEFT JOIN {{ ref('make_categories') }} AS c ON c.make = pr.make
WHERE p.purchased_at IS NOT NULL AND p.returned_at IS NULL
GROUP BY 1, 2
