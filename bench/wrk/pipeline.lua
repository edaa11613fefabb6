-- HTTP/1.1 pipelining for wrk, TechEmpower style.
--
-- Usage: wrk ... -s bench/wrk/pipeline.lua <url> -- [depth]
--
-- Every request() sends `depth` (default 16) copies of the request built by
-- wrk.format() (method, path, headers and body from the command line) in one
-- write. wrk checks the string at start-up, counts the requests in it, and
-- then waits for that many responses before sending the next batch. The
-- "requests" total it prints counts responses, not batches; the latency it
-- records is per batch (first byte written to last response read).

local batch

function init(args)
  local depth = tonumber(args[1]) or 16
  if depth < 1 then
    depth = 1
  end
  local parts = {}
  for i = 1, depth do
    parts[i] = wrk.format()
  end
  batch = table.concat(parts)
end

function request()
  return batch
end
