-- Argo CD health of a vmforge ComputeEnvironment, from its kstatus conditions.
--   Healthy      Ready=True for the current generation
--   Progressing  no status yet, a spec change not yet observed, Reconciling=True, or being deleted
--   Degraded     Stalled=True (the message says what to fix), or Ready=False with nothing in progress
local hs = { status = "Progressing", message = "Waiting for the vmforge operator" }

local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then return nil end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then return c end
  end
  return nil
end

local function text(c)
  if c.message ~= nil and c.message ~= "" then return c.reason .. ": " .. c.message end
  return c.reason
end

if obj.metadata.deletionTimestamp ~= nil then
  hs.message = "Deleting: the operator is removing its cloud resources"
  local stalled = condition("Stalled")
  if stalled ~= nil and stalled.status == "True" then
    hs.status = "Degraded"
    hs.message = "Deletion blocked: " .. text(stalled)
  end
  return hs
end
if obj.status == nil then return hs end

local generation = obj.metadata.generation
if generation ~= nil and (obj.status.observedGeneration == nil or obj.status.observedGeneration < generation) then
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end

local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = text(stalled)
  return hs
end
local reconciling = condition("Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.message = text(reconciling)
  return hs
end
local ready = condition("Ready")
if ready == nil or (ready.observedGeneration ~= nil and generation ~= nil and ready.observedGeneration < generation) then
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = text(ready)
elseif ready.status == "False" then
  hs.status = "Degraded"
  hs.message = text(ready)
end
return hs
