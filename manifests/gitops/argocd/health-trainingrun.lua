-- Argo CD health of a legistra.io TrainingRun, from its Ready condition (and observedGeneration).
hs = {}
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the Legistra operator"
  return hs
end
if obj.metadata ~= nil and obj.metadata.generation ~= nil and obj.status.observedGeneration ~= nil
    and obj.status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "the operator has not observed the latest spec yet"
  return hs
end
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Ready" then
    hs.message = c.message
    if c.status == "True" then
      hs.status = "Healthy"
    elseif c.reason == "Suspended" then
      hs.status = "Suspended"
    elseif c.reason == "Failed" or c.reason == "InvalidSpec" or c.reason == "ChildCreateFailed" then
      hs.status = "Degraded"
    else
      hs.status = "Progressing"
    end
    return hs
  end
end
hs.status = "Progressing"
hs.message = "no Ready condition yet"
return hs
