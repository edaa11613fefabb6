-- POST /v1/payments for wrk: every request a new payment of 1 USD.
--
-- Usage: wrk ... -s bench/wrk/payments.lua <url> -- TOKEN PAYEE_A PAYEE_B [RUN]
--
-- TOKEN is the payer's access token, PAYEE_A and PAYEE_B are usernames; the
-- requests alternate between the two payees (scripts/bench.sh picks one on
-- the payer's home shard and one on another shard). RUN, optional, is a tag
-- unique to this wrk run (scripts/bench.sh passes one, since the warm-up and
-- the measured run hit the same server).
--
-- The server stores every answer under its Idempotency-Key and replays it for
-- a repeated key, so every request carries a new key:
--   "b" .. RUN .. thread id .. per-thread random prefix .. "-" .. counter.
-- Each wrk thread has its own Lua state: setup() gives each thread an id and
-- the random prefix is seeded per thread.
--
-- request() is called for every request on wrk's core, so it only bumps a
-- counter, swaps two fields of a reused headers table and calls wrk.format.

local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_id", thread_count)
end

local headers
local bodies
local prefix
local counter = 0

function init(args)
  local token, payee_a, payee_b, run = args[1], args[2], args[3], args[4]
  if not token or not payee_a or not payee_b then
    error("usage: wrk ... -s payments.lua <url> -- TOKEN PAYEE_A PAYEE_B [RUN]")
  end
  local id = tonumber(thread_id) or 0
  math.randomseed(os.time() + id * 7919 + math.floor(os.clock() * 1e6))
  prefix = "b" .. (run or "") .. "t" .. id .. "r"
    .. string.format("%06x%06x", math.random(0, 0xffffff), math.random(0, 0xffffff))
    .. "-"
  headers = {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
  }
  local body = '{"to":"%s","amount":1,"currency":"USD"}'
  bodies = { string.format(body, payee_a), string.format(body, payee_b) }
end

function request()
  counter = counter + 1
  headers["Idempotency-Key"] = prefix .. counter
  return wrk.format("POST", "/v1/payments", headers, bodies[counter % 2 + 1])
end
