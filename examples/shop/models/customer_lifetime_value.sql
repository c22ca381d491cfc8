-- Per customer: completed purchases, total spend and first/last purchase.
SELECT
  u.id                                          AS user_id,
  u.email                                       AS email,
  COUNT(p.id)                                   AS purchases,
  CAST(COALESCE(SUM(pr.price), 0) AS DECIMAL(18, 2)) AS lifetime_value,
  MIN(p.purchased_at)                           AS first_purchase_at,
  MAX(p.purchased_at)                           AS last_purchase_at
FROM {{ ref('users') }} AS u
LEFT JOIN {{ ref('purchases') }} AS p
  ON p.user_id = u.id AND p.purchased_at IS NOT NULL AND p.returned_at IS NULL
LEFT JOIN {{ ref('products') }} AS pr ON pr.id = p.product_id
GROUP BY u.id, u.email
