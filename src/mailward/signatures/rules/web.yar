/*
 * Mailward's own rules (MIT). HTML and script attachments.
 */

rule HTML_Attachment_Password_Form
{
    meta:
        description = "HTML attachment with a password form: a local phishing page"
        category = "phishing"
        severity = "medium"
    strings:
        $form = "<form" nocase
        $pw1 = "type=\"password\"" nocase
        $pw2 = "type='password'" nocase
        $pw3 = "type=password" nocase
    condition:
        filename != "" and filetype == "HTML" and $form and any of ($pw*)
}

rule Script_Starts_Program
{
    meta:
        description = "Windows Script Host file (JScript/VBScript) that creates a shell and runs a program"
        category = "malware"
        severity = "high"
    strings:
        $obj1 = "ActiveXObject" nocase
        $obj2 = "CreateObject" nocase
        $shell = "WScript.Shell" nocase
        $run1 = ".Run" nocase
        $run2 = ".Exec" nocase
        $run3 = "ShellExecute" nocase
    condition:
        (in_archive or filename != "") and filesize < 5MB and any of ($obj*) and $shell and any of ($run*)
}
