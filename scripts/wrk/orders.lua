-- wrk script for scripts/bench-wrk.sh: POST /v1/orders with a distinct
-- Idempotency-Key on every request, the customers' tokens and the products
-- taken round-robin.
--
--   wrk -t2 -c256 -d20s -s scripts/wrk/orders.lua URL/v1/orders -- TOKENS PRODUCTS RUN
--
-- TOKENS: a file of customer bearer tokens, one per line; PRODUCTS: a file of
-- product ids, one per line; RUN: a run id that makes the keys unique across
-- runs. done() prints "wrk-*" lines that scripts/bench-wrk.sh reads.

local threads = {}
local counter = 0

function setup(thread)
   thread:set("id", counter)
   counter = counter + 1
   table.insert(threads, thread)
end

local function lines(path)
   local out = {}
   local file = assert(io.open(path, "r"), "cannot open " .. path)
   for line in file:lines() do
      if line ~= "" then
         table.insert(out, line)
      end
   end
   file:close()
   assert(#out > 0, path .. " is empty")
   return out
end

function init(args)
   local tokens = lines(args[1])
   local products = lines(args[2])
   run = args[3] or "run"
   sent = 0
   statuses = {}
   -- Requests are prepared from these; only the key and the pairing change.
   auth = {}
   for i, token in ipairs(tokens) do
      auth[i] = "Bearer " .. token
   end
   bodies = {}
   for i, product in ipairs(products) do
      bodies[i] = '{"product_id":"' .. product .. '","quantity":1}'
   end
end

function request()
   -- Each thread visits the customers and the products in turn, starting
   -- from its own place in the rotation.
   local slot = id * 7919 + sent
   sent = sent + 1
   local headers = {
      ["Authorization"] = auth[slot % #auth + 1],
      ["Content-Type"] = "application/json",
      ["Idempotency-Key"] = "wrk-" .. run .. "-" .. id .. "-" .. sent,
   }
   return wrk.format("POST", nil, headers, bodies[slot % #bodies + 1])
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
   local counts = {}
   for _, thread in ipairs(threads) do
      local seen = thread:get("statuses")
      for status, n in pairs(seen) do
         counts[status] = (counts[status] or 0) + n
      end
   end
   local e = summary.errors
   io.write(string.format(
      "wrk-result requests=%d duration_us=%d connect=%d read=%d write=%d timeout=%d status=%d\n",
      summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status))
   io.write(string.format(
      "wrk-latency p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f p999_ms=%.3f max_ms=%.3f mean_ms=%.3f\n",
      latency:percentile(50) / 1000, latency:percentile(90) / 1000,
      latency:percentile(99) / 1000, latency:percentile(99.9) / 1000,
      latency.max / 1000, latency.mean / 1000))
   local parts = {}
   for status, n in pairs(counts) do
      table.insert(parts, status .. "=" .. n)
   end
   table.sort(parts)
   io.write("wrk-status " .. table.concat(parts, " ") .. "\n")
end
