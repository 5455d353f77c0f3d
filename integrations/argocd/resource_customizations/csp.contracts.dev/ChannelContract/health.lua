-- Argo CD health of a ChannelContract (csp.contracts.dev/v1alpha1), from the operator's status.
-- Runs in Argo CD's Lua (gopher-lua, no string library): only base and table functions.
local hs = { status = "Progressing", message = "Waiting for the operator to reconcile the contract" }

local function condition(type)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function describe(c)
  local text = c.reason or c.type
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

if obj.status == nil or obj.status.observedGeneration == nil then
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration < obj.metadata.generation then
  hs.message = "Waiting for the operator to observe generation " .. tostring(obj.metadata.generation)
  return hs
end

local accepted = condition("Accepted")
if accepted ~= nil and accepted.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(accepted)
  return hs
end

local programmed = condition("Programmed")
if programmed ~= nil and programmed.status == "False" then
  -- ApplyFailed is retried with back-off; every other reason needs a fix.
  if programmed.reason == "ApplyFailed" then
    hs.status = "Progressing"
  else
    hs.status = "Degraded"
  end
  hs.message = describe(programmed)
  return hs
end

local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  local parts = {}
  if obj.status.channelSummary ~= nil then
    table.insert(parts, "channels " .. obj.status.channelSummary)
  end
  if obj.status.proxies ~= nil and obj.status.proxies.summary ~= nil then
    table.insert(parts, "proxies " .. obj.status.proxies.summary)
  end
  hs.message = table.concat(parts, "; ")
  return hs
end
if ready ~= nil and ready.status == "False" then
  -- Proxies picking the new configuration up is a rollout, not a failure.
  if ready.reason == "NoProxyServing" then
    hs.status = "Progressing"
  else
    hs.status = "Degraded"
  end
  hs.message = describe(ready)
  return hs
end
return hs
