-- wrk script for bench/server.py: POST /authenticate with a TokenReview body.
--
-- Usage: wrk ... -s review.lua URL -- tokens PREFIX   (thread N reads PREFIX.N, one token a line)
--        wrk ... -s review.lua URL -- constant TOKEN  (every request the same body)
-- In tokens mode each request takes the next unused line of its own thread's file, so no token
-- is sent twice in a run; if a thread runs out it counts the shortfall instead of repeating one,
-- and bench/server.py refuses figures with a shortfall. done() prints one "WRKJSON {...}" line.

local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

local head = '{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":"'
local tail = '"}}'
local tokens = {}
local fixed = nil

used = 0
short = 0

function init(args)
  wrk.method = "POST"
  wrk.path = "/authenticate"
  wrk.headers["Content-Type"] = "application/json"
  if args[1] == "tokens" then
    for line in io.lines(args[2] .. "." .. id) do
      tokens[#tokens + 1] = line
    end
  elseif args[1] == "constant" then
    fixed = wrk.format(nil, nil, nil, head .. args[2] .. tail)
  else
    error("review.lua: first argument must be 'tokens' or 'constant'")
  end
end

function request()
  if fixed then
    used = used + 1
    return fixed
  end
  local token = tokens[used + 1]
  if token == nil then
    -- Out of fresh tokens: send an empty-token body (a cheap denial), counted as a shortfall.
    short = short + 1
    token = ""
  else
    used = used + 1
  end
  return wrk.format(nil, nil, nil, head .. token .. tail)
end

function done(summary, latency, requests)
  local used_total, short_total = 0, 0
  for _, thread in ipairs(threads) do
    used_total = used_total + thread:get("used")
    short_total = short_total + thread:get("short")
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"used":%d,"short":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean, e.connect, e.read, e.write, e.status, e.timeout,
    used_total, short_total))
end
