# The polkit actions of the agent's local socket, as a policy file. The agent asks polkit
# (pkcheck, without interaction) about callers that are neither root nor in the admin
# group; nobody is allowed by default, so rules decide, for example:
#   polkit.addRule(function(action, subject) {
#     if (action.id.indexOf("org.yeet.agent.") == 0 && subject.isInGroup("wheel"))
#       return polkit.Result.YES;
#   });
let
  action = id: message: ''
    <action id="org.yeet.agent.${id}">
      <description>${message}</description>
      <message>Authentication is required to ${message}</message>
      <defaults>
        <allow_any>no</allow_any>
        <allow_inactive>no</allow_inactive>
        <allow_active>no</allow_active>
      </defaults>
    </action>
  '';
in
''
  <?xml version="1.0" encoding="UTF-8"?>
  <!DOCTYPE policyconfig PUBLIC "-//freedesktop//DTD PolicyKit Policy Configuration 1.0//EN"
    "http://www.freedesktop.org/standards/PolicyKit/1/policyconfig.dtd">
  <policyconfig>
    <vendor>yeet</vendor>
  ${action "detach" "detach this host from its fleet"}
  ${action "switch" "switch this detached host to a local system"}
  ${action "force-switch" "switch this host to a local system without its server"}
  ${action "attach" "attach this host to its fleet again"}
  </policyconfig>
''
