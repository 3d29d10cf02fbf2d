-- wrk script for bench/flood.py: review.lua's "tokens" mode, paced.
--
-- Usage: FLOOD_DELAY_MS=20 wrk ... -s flood.lua URL -- tokens PREFIX
-- Each connection waits FLOOD_DELAY_MS before each request, so C connections send about
-- C * 1000 / FLOOD_DELAY_MS requests a second (a little less: the answer's latency adds up).

local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "review.lua")

local pause_ms = tonumber(os.getenv("FLOOD_DELAY_MS") or "20")

function delay()
  return pause_ms
end
