-- Argo CD health of a ContractPolicy (csp.contracts.dev/v1alpha1): on a fleet hub, how the members stand
-- (status.fleet); elsewhere, what the webhook's audit found. A policy that objects fall short of is
-- Degraded, with what to fix. Runs in Argo CD's Lua (gopher-lua, no string library).
local hs = { status = "Progressing", message = "Waiting for the webhook's audit" }

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

if obj.status == nil then
  return hs
end

local fleet = obj.status.fleet
if fleet ~= nil then
  if fleet.clusters == nil or fleet.clusters == 0 then
    hs.message = "FLEET 0/0: no member cluster registered with the hub yet"
    return hs
  end
  if fleet.compliant == fleet.clusters then
    hs.status = "Healthy"
    hs.message = "FLEET " .. fleet.summary .. ": every member cluster complies"
    return hs
  end
  hs.status = "Degraded"
  hs.message = "FLEET " .. fleet.summary
  if fleet.members ~= nil then
    for _, m in ipairs(fleet.members) do
      if not m.compliant then
        hs.message = hs.message .. "; " .. m.cluster .. ": " .. (m.message or "not compliant")
        break
      end
    end
  end
  return hs
end

local accepted = condition("Accepted")
if accepted ~= nil and accepted.status == "False" then
  hs.status = "Degraded"
  hs.message = (accepted.reason or "Accepted") .. ": " .. (accepted.message or "")
  return hs
end
if obj.status.observedGeneration == nil or obj.status.auditTime == nil then
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration < obj.metadata.generation then
  hs.message = "Waiting for the audit of generation " .. tostring(obj.metadata.generation)
  return hs
end
local matched = obj.status.matched or 0
local violations = obj.status.violations or 0
if violations > 0 then
  hs.status = "Degraded"
  hs.message = tostring(violations) .. " of " .. tostring(matched) .. " matched objects fall short (" .. (obj.status.compliance or "?") .. " compliant)"
  local samples = obj.status.violationSamples
  if samples ~= nil and samples[1] ~= nil then
    hs.message = hs.message .. "; e.g. " .. samples[1].message
  end
  return hs
end
hs.status = "Healthy"
hs.message = tostring(matched) .. " matched objects comply"
return hs
